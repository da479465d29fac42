"""Multilingual consultation assistant and help desk.

``bot.engine`` runs inside Rasa's Python 3.10 runtime and imports nothing else from ``bot``;
everything else runs in the app's Python 3.11 runtime.
"""
