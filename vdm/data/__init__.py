"""Input: TFDS image data sets prepared once and read as array_record (tfds_sets), toy and procedural data sets
generated in numpy (toy_sets; shapes, the captioned scenes), captions of the labelled sets (captions), and the
iterators, DatasetInfo and shapes every Task reads (pipeline).
"""
