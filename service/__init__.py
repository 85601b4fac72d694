"""What the API, the workers and the local command line share: settings, the MLflow
tracker (and, later, the database engine and the job store)."""

import os

# MLflow 3 reports usage to its makers unless told not to: a cluster service does not
# phone home (and every call pays for the record). Set before anything imports mlflow.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
