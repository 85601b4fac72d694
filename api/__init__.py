"""The FastAPI service (``create_app`` in ``api.app``): routes that translate HTTP to
``service`` calls.

    app.py         create_app, start-up checks, error handlers, the body-size limit
    deps.py        dependencies as typed aliases (SessionDep, ExperimentDep, ...)
    schemas.py     what goes out (XPublic, XsPublic(data, count)); specs come in as regcore.spec
    operations.py  submit / analyses / cancel / list / queue: commit, then enqueue
    tracking.py    MLflow: the experiment at submit, metrics, artifacts (paths confined)
    routes/        one module per resource: experiments, queue, catalog, health
"""
