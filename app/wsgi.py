"""The entry point gunicorn serves; it also starts the background greenlets."""

from app import create_app
from app.db import GroupWriter

application = create_app()
GroupWriter(application.config["DATABASE"]).start()
