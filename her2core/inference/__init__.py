"""Virtual HER2 from a trained run: tile batches and tile folders (`tiles`), regions and whole
slides with overlap blending (`region`, `slide`, `blend`), many slides (`batch`).

Import submodules explicitly; nothing heavy is imported here.
"""
