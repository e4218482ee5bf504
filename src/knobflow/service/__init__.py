"""knobflow's tuning service: the Kruize HPO contract and the native API over a store.

:func:`knobflow.service.app.create_app` builds the FastAPI app; ``knobflow serve`` runs it
standalone (:mod:`knobflow.service.serve`); the Airflow plugin mounts it in the api-server.
"""
