"""Reports: the JSON record, human tables, plots and Markdown summaries."""
