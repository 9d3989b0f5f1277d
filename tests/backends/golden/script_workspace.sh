#!/bin/bash
#SBATCH --job-name=labhub-0123456789abcdef0123456789abcdef
#SBATCH --comment=labhub:labhub:0123456789abcdef0123456789abcdef
#SBATCH --output=/srv/labhub/slurm/0123456789abcdef0123456789abcdef/slurm-%j.out
#SBATCH --chdir=/srv/labhub/homes/alice
#SBATCH --time=242
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --mem=2048M
#SBATCH --no-requeue
# LabHub instance 0123456789abcdef0123456789abcdef: workspace 'ws1' of 'alice'; generated, do not edit
export LABHUB_LAUNCH=eyJhcmd2IjogWyJqdXB5dGVyLWxhYiIsICItLVNlcnZlckFwcC5pcD17aXB9IiwgIi0tU2VydmVyQXBwLnBvcnQ9e3BvcnR9IiwgIi0tU2VydmVyQXBwLmJhc2VfdXJsPXtiYXNlX3VybH0iLCAiLS1TZXJ2ZXJBcHAucm9vdF9kaXI9e2hvbWV9Il0sICJiYXNlX3VybCI6ICIvdXNlci9hbGljZS93czEvIiwgImNhbGxob21lIjogImh0dHBzOi8vaHViLmV4YW1wbGUub3JnL2FwaS92MS9pbnN0YW5jZXMvMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWYvY2FsbGhvbWUiLCAiY2FsbGhvbWVfdGltZW91dCI6IDYwLCAiZW52IjogeyJKVVBZVEVSX1RPS0VOIjogInRvay1zZWNyZXQiLCAiTEFCSFVCX0lOU1RBTkNFX0lEIjogIjAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVmIiwgIkxBQkhVQl9UT0tFTiI6ICJ0b2stc2VjcmV0In0sICJob21lIjogIi9zcnYvbGFiaHViL2hvbWVzL2FsaWNlIiwgImluc3RhbmNlX2lkIjogIjAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVmIiwgInRva2VuIjogInRvay1zZWNyZXQifQ==
exec python3 -c 'import base64, http.client, json, os, re, socket, sys, time, urllib.parse
p = json.loads(base64.b64decode(os.environ.pop("LABHUB_LAUNCH")))
def say(msg):
    print("labhub: " + msg, file=sys.stderr, flush=True)
u = urllib.parse.urlsplit(p["callhome"])
ip = p.get("ip") or ""
if not ip:
    try:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((u.hostname, u.port or (443 if u.scheme == "https" else 80)))
        ip = s.getsockname()[0]
        s.close()
    except OSError:
        ip = socket.gethostbyname(socket.gethostname())
s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
s.bind((ip, 0))
port = s.getsockname()[1]
s.close()
v = {"port": str(port), "ip": ip, "base_url": p["base_url"], "home": p["home"]}
argv = [re.sub(r"\{(port|ip|base_url|home)\}", lambda m: v[m.group(1)], a) for a in p["argv"]]
body = json.dumps({"host": ip, "port": port, "job_id": os.environ.get("SLURM_JOB_ID", "")}).encode()
headers = {"Authorization": "token " + p["token"], "Content-Type": "application/json"}
deadline = time.monotonic() + p.get("callhome_timeout", 60)
delay = 0.1
Conn = http.client.HTTPSConnection if u.scheme == "https" else http.client.HTTPConnection
while True:
    try:
        c = Conn(u.netloc, timeout=10)
        c.request("POST", u.path, body=body, headers=headers)
        r = c.getresponse()
        err = "HTTP %s %s" % (r.status, r.read(300).decode(errors="replace"))
        c.close()
        if r.status < 300:
            break
        if r.status not in (409, 429, 502, 503, 504):
            say("the hub refused the call-home: " + err)
            sys.exit(70)
    except (OSError, http.client.HTTPException) as e:
        err = str(e)
    if time.monotonic() > deadline:
        say("cannot call home to %s: %s" % (u.netloc, err))
        sys.exit(69)
    time.sleep(delay)
    delay = min(delay * 2, 2.0)
say("listening on %s:%s; starting %s" % (ip, port, argv[0]))
env = dict(os.environ)
env.update(p["env"])
env["HOME"] = p["home"]
try:
    os.execvpe(argv[0], argv, env)
except OSError as e:
    say("cannot start %s: %s" % (argv[0], e))
    sys.exit(127)
'
