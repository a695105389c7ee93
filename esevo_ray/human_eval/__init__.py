"""Interactive human evaluation (paper Section 3.4.1): store, routes, page and report.

The routes are a FastAPI `APIRouter` that the Serve application mounts; they reach the
served models only through the small `Host` interface in `routes.py`.
"""
