"""Serving engines, traffic routers, the canary controller and analysis, serving manifests."""
