"""python -m gigamlx.cli"""

from gigamlx.cli import app

app()
