#!/usr/bin/env bash
# Check a running transcription server the way the AWQ service guide does:
# health, JSON, text download, SRT, async submit + poll to completion.
#
#   bash test_awq_service.sh                     # against http://localhost:5000 with a generated clip
#   bash test_awq_service.sh my_audio.mp3        # with your own audio file
#   BASE_URL=http://gpu-box:8080 bash test_awq_service.sh
#
# Needs bash, curl and python3 only. Prints PASS/FAIL per check; exits non-zero if any check fails.
# Environment: BASE_URL, ASYNC_TIMEOUT (seconds to wait for the async job, default 900),
# REQUEST_TIMEOUT (seconds per synchronous request, default 900).
set -uo pipefail

BASE_URL=${BASE_URL:-http://localhost:5000}
BASE_URL=${BASE_URL%/}
ASYNC_TIMEOUT=${ASYNC_TIMEOUT:-900}
REQUEST_TIMEOUT=${REQUEST_TIMEOUT:-900}

for tool in curl python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "FAIL  $tool is required" >&2; exit 2; }
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [ $# -ge 1 ]; then
  audio=$1
  [ -r "$audio" ] || { echo "FAIL  cannot read audio file $audio" >&2; exit 2; }
else
  # A 6-second clip: speech from espeak-ng when it is installed, otherwise a spoken-like tone pattern
  # synthesised with Python's standard library (the checks test the service, not the words).
  audio="$work/audio.wav"
  if command -v espeak-ng >/dev/null 2>&1; then
    espeak-ng -w "$audio" "This is a test of the Qwen two point five Omni transcription service." 2>/dev/null
  fi
  if [ ! -s "$audio" ]; then
    python3 - "$audio" <<'PY'
import math, struct, sys, wave
rate = 16000
with wave.open(sys.argv[1], "wb") as out:
    out.setnchannels(1)
    out.setsampwidth(2)
    out.setframerate(rate)
    frames = bytearray()
    for i in range(6 * rate):
        t = i / rate
        envelope = 0.5 + 0.5 * math.sin(2 * math.pi * 3 * t)  # syllable-like amplitude modulation
        pitch = 140 + 40 * math.sin(2 * math.pi * 0.5 * t)
        sample = envelope * sum(math.sin(2 * math.pi * k * pitch * t) / k for k in range(1, 6))
        frames += struct.pack("<h", int(6000 * sample))
    out.writeframes(bytes(frames))
PY
  fi
fi
name=$(basename "$audio")
stem=${name%.*}

failures=0
pass() { printf 'PASS  %s\n' "$1"; }
fail() {
  printf 'FAIL  %s\n' "$1"
  if [ $# -ge 2 ] && [ -n "$2" ]; then printf '      %s\n' "$(printf '%s' "$2" | head -c 600)"; fi
  failures=$((failures + 1))
}

# json_get FILE EXPR: evaluate a Python expression on the parsed JSON body `d`; empty output on error.
json_get() { python3 -c "import json, sys; d = json.load(open(sys.argv[1], encoding='utf-8')); print($2)" "$1" 2>/dev/null; }

echo "Checking $BASE_URL with $audio"

# 1. Health
code=$(curl -s -o "$work/health.json" -w '%{http_code}' --max-time 30 "$BASE_URL/health")
if [ "$code" = 200 ] && [ "$(json_get "$work/health.json" "d['status']")" = ok ] \
   && [ "$(json_get "$work/health.json" "all(k in d for k in ('model_loaded', 'gpu_available', 'gpu_memory_allocated_gb', 'gpu_memory_reserved_gb', 'timestamp'))")" = True ]; then
  pass "health: status ok, model_loaded=$(json_get "$work/health.json" "d['model_loaded']"), gpu_available=$(json_get "$work/health.json" "d['gpu_available']")"
elif [ "$code" = 000 ]; then
  fail "health: cannot reach $BASE_URL (is the server running? set BASE_URL to its address)"
  exit 1
else
  fail "health (HTTP $code)" "$(cat "$work/health.json" 2>/dev/null)"
fi

# 2. JSON transcription
code=$(curl -s -o "$work/result.json" -w '%{http_code}' --max-time "$REQUEST_TIMEOUT" -X POST \
  -F "file=@$audio" -F "segment_duration=60" -F "temperature=0.1" "$BASE_URL/transcribe/json")
if [ "$code" = 200 ] && [ "$(json_get "$work/result.json" "d['status']")" = success ] \
   && [ "$(json_get "$work/result.json" "isinstance(d['transcription'], str) and bool(d['output_file'])")" = True ]; then
  pass "json: $(json_get "$work/result.json" "repr(d['transcription'][:80])") -> $(json_get "$work/result.json" "d['output_file']")"
else
  fail "json (HTTP $code)" "$(cat "$work/result.json" 2>/dev/null)"
fi

# 3. Text download, named after the upload
mkdir -p "$work/download"
code=$(cd "$work/download" && curl -s -OJ -w '%{http_code}' --max-time "$REQUEST_TIMEOUT" -X POST \
  -F "file=@$audio" "$BASE_URL/transcribe")
if [ "$code" = 200 ] && [ -f "$work/download/$stem.txt" ]; then
  pass "text download: saved as $stem.txt ($(wc -c < "$work/download/$stem.txt") bytes)"
else
  fail "text download (HTTP $code): expected $stem.txt" "$(ls "$work/download")"
fi

# 4. SRT subtitles
code=$(curl -s -o "$work/subtitle.srt" -w '%{http_code}' --max-time "$REQUEST_TIMEOUT" -X POST \
  -F "file=@$audio" -F "segment_duration=10" "$BASE_URL/transcribe/srt")
srt_check=$(python3 - "$work/subtitle.srt" <<'PY'
import re, sys
try:
    text = open(sys.argv[1], encoding="utf-8").read().strip()
except OSError:
    print("no SRT file received")
    sys.exit(1)
if not text:
    print("ok: no speech, no cues")
    sys.exit(0)
stamp = r"(\d\d):(\d\d):(\d\d),(\d\d\d)"
cues = [c for c in re.split(r"\n\s*\n", text) if c.strip()]
last_end = 0.0
for n, cue in enumerate(cues, 1):
    lines = cue.strip().splitlines()
    match = re.fullmatch(stamp + " --> " + stamp, lines[1].strip()) if len(lines) >= 3 else None
    if lines[0].strip() != str(n) or not match:
        print(f"bad cue {n}: {cue[:80]!r}")
        sys.exit(1)
    g = [int(x) for x in match.groups()]
    start = g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000
    end = g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000
    if not (last_end <= start < end):
        print(f"cue {n} times out of order")
        sys.exit(1)
    last_end = end
print(f"ok: {len(cues)} cues, last ends at {last_end:.3f} s")
PY
)
if [ "$code" = 200 ] && [ "${srt_check%%:*}" = ok ]; then
  pass "srt: ${srt_check#ok: }"
else
  fail "srt (HTTP $code): $srt_check" "$(head -c 300 "$work/subtitle.srt" 2>/dev/null)"
fi

# 5. Async job: submit, then poll until it completes
code=$(curl -s -o "$work/submit.json" -w '%{http_code}' --max-time 120 -X POST -F "file=@$audio" \
  "$BASE_URL/transcribe/async")
job_id=$(json_get "$work/submit.json" "d['job_id']")
if [ "$code" = 202 ] && [ -n "$job_id" ]; then
  pass "async submit: job $job_id"
  status=processing
  deadline=$(( $(date +%s) + ASYNC_TIMEOUT ))
  while [ "$status" = processing ] && [ "$(date +%s)" -lt "$deadline" ]; do
    sleep 1
    curl -s -o "$work/status.json" --max-time 30 "$BASE_URL/status/$job_id"
    status=$(json_get "$work/status.json" "d['status']")
    status=${status:-processing}
  done
  if [ "$status" = completed ] \
     && [ "$(json_get "$work/status.json" "isinstance(d['transcription'], str) and bool(d['output_file']) and bool(d['completed_at'])")" = True ]; then
    pass "async result: completed at $(json_get "$work/status.json" "d['completed_at']")"
  else
    fail "async result: status $status" "$(cat "$work/status.json" 2>/dev/null)"
  fi
else
  fail "async submit (HTTP $code)" "$(cat "$work/submit.json" 2>/dev/null)"
fi

# 6. Unknown job ids are 404 with a JSON error
code=$(curl -s -o "$work/missing.json" -w '%{http_code}' --max-time 30 "$BASE_URL/status/no-such-job")
if [ "$code" = 404 ] && [ "$(json_get "$work/missing.json" "d['status']")" = error ]; then
  pass "unknown job: 404 with a JSON error"
else
  fail "unknown job (HTTP $code)" "$(cat "$work/missing.json" 2>/dev/null)"
fi

if [ "$failures" -eq 0 ]; then
  echo "All checks passed."
else
  echo "$failures check(s) failed."
fi
exit $(( failures > 0 ))
