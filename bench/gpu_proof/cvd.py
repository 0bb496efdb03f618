# CUDA_VISIBLE_DEVICES: what the CUDA driver itself shows (cuInit +
# cuDeviceGetCount + cuDeviceGetUuid in a fresh process) next to what the
# ModelBudget probe lists, for each value.  usage: cvd.py GPU-UUID PROBE
import os, re, subprocess, sys

CHILD = r'''
import ctypes
c = ctypes.CDLL("libcuda.so.1")
r = c.cuInit(0)
n = ctypes.c_int(0)
if r == 0:
    c.cuDeviceGetCount(ctypes.byref(n))
out = []
for i in range(n.value):
    d = ctypes.c_int()
    c.cuDeviceGet(ctypes.byref(d), i)
    u = (ctypes.c_ubyte * 16)()
    c.cuDeviceGetUuid(u, d)
    h = bytes(u).hex()
    out.append("GPU-%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:]))
print("cuInit=%d %s" % (r, out))
'''

uuid, probe = sys.argv[1], sys.argv[2]
hx = uuid[4:]
p8 = uuid[:12]  # GPU-xxxxxxxx
cases = [None, "", "0", "1", "-1", "-0", "0,0", "0,00", "0,1", "1,0", "0,-1,1", " 0", "0 ",
         "\t0", "0x", "0abc", "+0", "00", ",", "0,", ",0", "0,,0", "0 ,0",
         uuid, uuid.upper(), "gpu-" + hx, p8, "GPU-", "GPU", " " + uuid, uuid + " ",
         uuid + "\t", p8 + "xyz", p8 + " xyz", p8 + "-", "GPU-" + hx[:4] + "-" + hx[4:8],
         uuid + ",0", "0," + uuid, uuid + "," + uuid, p8 + "," + uuid[:16], hx, hx[:8],
         "GPU-ffffffff", uuid + ",1", "1," + uuid, "0,GPU-ffffffff",
         "MIG-" + hx, "MIG-" + hx[:8] + ",0", "0,MIG-" + hx[:8], p8 + ",MIG-" + hx[:8],
         "MIG-" + hx[:8] + "," + p8, "MIG-" + uuid + "/0/0", "MIG-ffffffff", "0,MIG-ffffffff"]
same = 0
for v in cases:
    env = dict(os.environ)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if v is not None:
        env["CUDA_VISIBLE_DEVICES"] = v
    cuda = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True)
    cuda = (cuda.stdout + cuda.stderr).strip()
    mine = subprocess.run([probe, "--quiet"], env=env, capture_output=True, text=True).stdout
    mine = re.findall(r"uuid=(\S+)", mine)
    ok = cuda.endswith(str(mine))
    same += ok
    print("%-4s CVD=%-58s cuda: %-52s probe: %s" % ("same" if ok else "DIFF", repr(v), cuda, mine))
print("%d of %d values: probe lists the GPUs CUDA shows" % (same, len(cases)))
