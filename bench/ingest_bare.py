"""The baseline of bench/ingest.py: a bare Flask app that answers the webhook path with 204.

It does nothing but what the HTTP stack does (gunicorn, werkzeug, Flask routing); it does not
read the body, check a token or touch Redis. Served with the shipped gunicorn config, as the
real app is.
"""

from flask import Flask

app = Flask("ingest_bare")


@app.post("/webhooks/gitlab")
def gitlab():
    return "", 204


@app.get("/healthz")
def healthz():
    return "ok"
