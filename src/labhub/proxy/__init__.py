"""LabHub's proxy: the route table, the authenticator cache and the data plane."""

from .routes import Authenticator, Principal, Route, RouteTable
from .server import ProxyServer

__all__ = ["Authenticator", "Principal", "ProxyServer", "Route", "RouteTable"]
