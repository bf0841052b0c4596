"""Small shared helpers: atomic writes, typed configs as JSON, progress."""
