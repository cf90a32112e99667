"""Test and demo helpers: a real Evennia game on 127.0.0.1 (`game.GameServer`) and clients (`clients`)."""
