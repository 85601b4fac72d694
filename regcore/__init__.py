"""regcore: the science of regbench (datasets, models, regularizers, training, analyses).

Pure PyTorch; knows nothing of HTTP, Celery, SQL or MLflow.
"""

__version__ = "0.1.0"
