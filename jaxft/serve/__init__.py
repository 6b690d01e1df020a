"""HTTP serving of exported models: `python -m jaxft.main serve --model DIR [--model DIR2 ...] --port 8080`.

app.py      the Starlette app (POST /predict, GET /health, GET /metrics) and the command
batcher.py  dynamic batching: requests that arrive within a few ms share one model call
inputs.py   request bodies -> validated items, or a RequestError with an HTTP status and a message
metrics.py  counters and histograms in Prometheus' text format
"""
