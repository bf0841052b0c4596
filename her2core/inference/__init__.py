"""Virtual HER2 from a trained run: tile batches and tile folders (`tiles`), regions and whole
slides with overlap blending (`region`, `slide`, `blend`), confidence maps (`confidence`,
`confidence_out`); one job's settings in one `options.InferenceOptions`. Many slides:
`her2core.pipelines.batch`.

Import submodules explicitly; nothing heavy is imported here.
"""
