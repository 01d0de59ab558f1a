"""The configuration: the environment's settings (``settings``), the YAML file of routes and
pod templates (``config_file``, its templates checked against the Kubernetes schema by
``pod_schema``), what `check-config` warns about in a file that loads (``config_warnings``),
and the web's default spool directories (``spool_paths``). A bad value is refused at start-up
by its field's name, never quoting it."""
