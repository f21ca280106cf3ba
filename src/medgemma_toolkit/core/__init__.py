"""Plain types shared by every layer: message parts and prompts, what a model is, load and sampling options.

The bottom layer (docs/ARCHITECTURE.md): it imports nothing of ours but `errors`, so `imaging`, `prompts`, `models`
and `backends` can all speak in these types without importing each other.
"""
