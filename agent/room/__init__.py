"""Interview room (同步录音录像): overlay, compositor, segmenter."""
