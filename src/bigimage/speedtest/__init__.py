"""Task 2, the read speed test: files against TFRecords over a grid of batch sizes and counts.

Entry point: :func:`bigimage.speedtest.task.run_speedtest`.
"""
