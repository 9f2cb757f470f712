from spendgate.cli import app

app()
