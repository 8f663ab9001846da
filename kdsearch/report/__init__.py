"""What users take away: rows read once from storage, tables, plots, export, dashboard."""
