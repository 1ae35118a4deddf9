"""Data: tables in, tf.Examples out (table reading, spans, example building, splits, feedback, validation)."""
