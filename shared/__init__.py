"""trawl's common library: settings, queue contracts, database, browser pool and observability helpers."""
