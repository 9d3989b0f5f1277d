"""Seed a JupyterHub database (run with benchmarks/.env's Python, hub stopped).

usage: jh_seed.py DB_URL USERS INSTANCES
Adds USERS users (bench-u0000, ...) and INSTANCES spawner rows (each user's
default server, recorded but not running) through JupyterHub's own ORM.
"""

import sys

from jupyterhub import orm

url, n_users, n_instances = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
db = orm.new_session_factory(url)()
have = {name for (name,) in db.query(orm.User.name)}
users = []
for i in range(n_users):
    name = f"bench-u{i:04d}"
    if name not in have:
        u = orm.User(name=name)
        db.add(u)
        users.append(u)
db.commit()
for u in users[:n_instances]:
    db.add(orm.Spawner(user=u, name=""))
db.commit()
print(f"{len(users)} users, {min(len(users), n_instances)} spawners")
