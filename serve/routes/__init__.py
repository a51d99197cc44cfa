"""HTTP routes, one blueprint per API family."""

from ..web import bp as web_bp
from .health import bp as health_bp
from .jobs import bp as jobs_bp
from .openai import bp as openai_bp
from .transcribe import bp as transcribe_bp

BLUEPRINTS = (health_bp, transcribe_bp, jobs_bp, openai_bp, web_bp)
