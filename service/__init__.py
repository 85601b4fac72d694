"""What the API, the workers and the local command line share: settings, the MLflow
tracker (and, later, the database engine and the job store)."""
