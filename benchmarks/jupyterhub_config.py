"""JupyterHub as the peer: DummyAuthenticator, SimpleLocalProcessSpawner, CHP from benchmarks/node.

Everything machine-specific comes from BENCH_JH_* environment variables set by run.py.
The spawner runs JupyterLab (jupyterhub-singleuser) from benchmarks/.env as the hub's own
user, like LabHub's local backend with LABHUB_ISOLATION=none: no accounts, no cgroups.
"""

import os

c = get_config()  # type: ignore[name-defined]  # noqa: F821
work = os.environ["BENCH_JH_WORK"]
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = int(os.environ["BENCH_JH_PORT"])
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = int(os.environ["BENCH_JH_HUB_PORT"])
c.JupyterHub.db_url = f"sqlite:///{work}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = f"{work}/jupyterhub_cookie_secret"
c.JupyterHub.pid_file = f"{work}/jupyterhub.pid"
c.JupyterHub.log_level = "WARN"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = f"{work}/homes/{{username}}"
c.Spawner.args = ["--ServerApp.allow_root=True"]
c.Spawner.start_timeout = 180
c.Spawner.http_timeout = 180
c.JupyterHub.concurrent_spawn_limit = 0
c.JupyterHub.active_server_limit = 0
c.JupyterHub.api_page_default_limit = 10_000
c.JupyterHub.api_page_max_limit = 10_000
c.ConfigurableHTTPProxy.command = [os.environ["BENCH_JH_CHP"]]
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{os.environ['BENCH_JH_PROXY_API_PORT']}"
c.ConfigurableHTTPProxy.log_level = "error"
c.JupyterHub.services = [{"name": "bench", "api_token": os.environ["BENCH_JH_TOKEN"]}]
c.JupyterHub.load_roles = [{
    "name": "bench",
    "scopes": ["admin:users", "admin:servers", "access:servers", "list:users", "read:users", "tokens"],
    "services": ["bench"],
}]
