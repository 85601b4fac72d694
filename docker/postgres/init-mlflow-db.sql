-- Runs once, when the PostgreSQL volume is first initialised (docker-entrypoint-initdb.d).
-- POSTGRES_DB creates the regbench job store; this adds the MLflow tracking server's
-- backend store, owned by the same user (POSTGRES_USER).
CREATE DATABASE mlflow;
