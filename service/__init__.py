"""The face of ci-autoscaler: the Flask app (webhooks, health, metrics), gunicorn config, CLI.

The web process never imports kubernetes or jenkins; it enqueues tasks by dotted name.
"""
