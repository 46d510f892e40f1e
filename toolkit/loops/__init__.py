"""Training loops: the framework steps environments so agents never have to."""
