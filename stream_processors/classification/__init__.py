"""Report classification: normalisation, the rule engine, evaluation and the CLI's batch tools."""
