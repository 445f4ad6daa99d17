"""Task 2, the read speed test: files against TFRecords (:func:`bigimage.speedtest.task.run_speedtest`)."""
