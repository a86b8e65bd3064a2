"""The web dashboard (SPEC §12): an ASGI application that shows flows, a flow's
timeline, history, explanation and state diagrams, and the approvals waiting for
the viewer.

Needs the ``web`` extra (Starlette, Jinja2, uvicorn, python-multipart); ``import
flowfsm`` never loads it. Mount it in a service::

    app.mount("/flows", dashboard(engine, authorize=who_is_it))

or run it with ``flowfsm serve``. Without ``authorize`` it is read-only: no page
has a form, and every POST is refused. ``authorize(request)`` returns the
``Viewer`` (the actor and groups the embedding service vouches for) or None, and
each action it allows is one trigger through the engine, with that actor.
"""

from flowfsm.web._app import Authorize, dashboard
from flowfsm.web._security import Viewer

__all__ = ["Authorize", "Viewer", "dashboard"]
