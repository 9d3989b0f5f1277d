#!/bin/bash
#SBATCH --job-name=labhub-0123456789abcdef0123456789abcdef
#SBATCH --comment=labhub:labhub:0123456789abcdef0123456789abcdef:job
#SBATCH --output=/srv/labhub/slurm/0123456789abcdef0123456789abcdef/slurm-%j.out
#SBATCH --chdir=/srv/labhub/jobs/0123456789abcdef0123456789abcdef
#SBATCH --time=62
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --mem=4096M
#SBATCH --no-requeue
# LabHub instance 0123456789abcdef0123456789abcdef: job 'train-1' of 'alice'; generated, do not edit
export LABHUB_LAUNCH=eyJhcmd2IjogWyJweXRob24zIiwgIi1jIiwgImltcG9ydCBydW5weTsgcnVucHkucnVuX3BhdGgoJ21haW4ucHknKSIsICJ7aG9tZX0iXSwgImJhc2VfdXJsIjogIi91c2VyL2FsaWNlL3RyYWluLTEvIiwgImRpcnMiOiBbIm91dHB1dCJdLCAiZW52IjogeyJKVVBZVEVSX1RPS0VOIjogInRvay1zZWNyZXQiLCAiTEFCSFVCX0lOUFVUIjogIi9zcnYvbGFiaHViL2ZvbGRlcnMvNy9pbnB1dHMiLCAiTEFCSFVCX0lOU1RBTkNFX0lEIjogIjAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVmIiwgIkxBQkhVQl9NRVRSSUNTIjogIi9zcnYvbGFiaHViL2pvYnMvMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWYvbWV0cmljcy5qc29ubCIsICJMQUJIVUJfT1VUUFVUIjogIi9zcnYvbGFiaHViL2pvYnMvMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWYvb3V0cHV0IiwgIkxBQkhVQl9UT0tFTiI6ICJ0b2stc2VjcmV0IiwgIlBBVEgiOiAiL3Vzci9sb2NhbC9iaW46L3Vzci9iaW46L2JpbiJ9LCAiaG9tZSI6ICIvc3J2L2xhYmh1Yi9qb2JzLzAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVmIiwgImluc3RhbmNlX2lkIjogIjAxMjM0NTY3ODlhYmNkZWYwMTIzNDU2Nzg5YWJjZGVmIn0=
exec python3 -c 'import base64, json, os, re, sys
p = json.loads(base64.b64decode(os.environ.pop("LABHUB_LAUNCH")))
def say(msg):
    print("labhub: " + msg, file=sys.stderr, flush=True)
home = p["home"]
for name in p["dirs"]:
    d = os.path.join(home, name)
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        if os.path.islink(d) or not os.path.isdir(d):
            say("cannot create %s in %s: something else has that name" % (name, home))
            sys.exit(73)
    except OSError as e:
        say("cannot create %s in %s: %s" % (name, home, e))
        sys.exit(73)
v = {"base_url": p["base_url"], "home": home}
argv = [re.sub(r"\{(base_url|home)\}", lambda m: v[m.group(1)], a) for a in p["argv"]]
env = dict(os.environ)
env.pop("VIRTUAL_ENV", None)
env.update(p["env"])
env["HOME"] = home
try:
    os.execvpe(argv[0], argv, env)
except OSError as e:
    say("cannot start %s: %s" % (argv[0], e))
    sys.exit(127)
'
