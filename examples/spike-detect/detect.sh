#!/bin/sh
# Threshold spike detection on one extracellular channel (CSV: time_ms,voltage_uv).
#
#   detect.sh DATA CONFIG RESULTS_DIR
#
# 1. high-pass: subtract a centred moving average (baseline_window_ms wide);
# 2. noise: sigma = median(|x|) / 0.6745 (robust to the spikes themselves);
# 3. detect: negative crossings of -threshold_sd * sigma, at most one per refractory_ms,
#    each spike placed at its trough within the next refractory_ms.
# Writes spikes.csv (time_ms,amplitude_uv), summary.json and spikes.svg (the filtered trace,
# the threshold and each detected spike) to RESULTS_DIR.
set -eu
data=$1; config=$2; out=$3
[ -r "$data" ] || { echo "detect: cannot read dataset $data" >&2; exit 2; }
[ -r "$config" ] || { echo "detect: cannot read config $config" >&2; exit 2; }
mkdir -p "$out"

# A flat YAML/JSON config: `key: value` or `"key": value,` lines.
conf() {
  v=$(sed -n "s/^[[:space:]\"]*$1\"*[[:space:]]*:[[:space:]]*\([-0-9.eE+]*\).*/\1/p" "$config" | head -n 1)
  echo "${v:-$2}"
}
threshold_sd=$(conf threshold_sd 4.5)
refractory_ms=$(conf refractory_ms 1.0)
window_ms=$(conf baseline_window_ms 3.0)
echo "detect: threshold ${threshold_sd} sd, refractory ${refractory_ms} ms, baseline window ${window_ms} ms"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# 1. high-pass filter
awk -F, -v win_ms="$window_ms" '
  NR == 1 { next }
  $1 !~ /^-?[0-9.]+$/ || $2 !~ /^-?[0-9.eE+]+$/ { printf "detect: line %d is not time_ms,voltage_uv: %s\n", NR, $0 > "/dev/stderr"; bad = 1; exit 3 }
  { n++; t[n] = $1; v[n] = $2 }
  END {
    if (bad) exit 3
    if (n < 3) { print "detect: fewer than 3 samples" > "/dev/stderr"; exit 3 }
    dt = t[2] - t[1]; if (dt <= 0) { print "detect: time column is not increasing" > "/dev/stderr"; exit 3 }
    h = int(win_ms / dt / 2); if (h < 1) h = 1
    s = 0; lo = 1; hi = 0
    for (i = 1; i <= n; i++) {
      while (hi < n && hi < i + h) { hi++; s += v[hi] }
      while (lo < i - h) { s -= v[lo]; lo++ }
      printf "%s,%.3f\n", t[i], v[i] - s / (hi - lo + 1)
    }
  }' "$data" >"$work/filtered.csv"
samples=$(wc -l <"$work/filtered.csv")
echo "detect: filtered ${samples} samples"

# 2. robust noise estimate
sigma=$(awk -F, '{ x = $2 < 0 ? -$2 : $2; print x }' "$work/filtered.csv" | sort -g |
  awk '{ a[NR] = $1 } END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf "%.4f", m / 0.6745 }')
echo "detect: noise sigma ${sigma} uV"

# 3. threshold crossings with refractory period
awk -F, -v thr="$threshold_sd" -v sigma="$sigma" -v refr="$refractory_ms" '
  BEGIN { level = -thr * sigma; print "time_ms,amplitude_uv"; last = -1e18; open = 0 }
  {
    t = $1 + 0; x = $2 + 0
    if (open) {
      if (t <= start + refr) { if (x < best) { best = x; bt = t } ; next }
      printf "%.1f,%.2f\n", bt, best; last = bt; open = 0; count++
    }
    if (x < level && t > last + refr) { open = 1; start = t; best = x; bt = t }
  }
  END { if (open) { printf "%.1f,%.2f\n", bt, best; count++ } }' "$work/filtered.csv" >"$out/spikes.csv"

n_spikes=$(($(wc -l <"$out/spikes.csv") - 1))
duration_ms=$(tail -n 1 "$work/filtered.csv" | cut -d, -f1)
awk -v n="$n_spikes" -v d="$duration_ms" -v s="$sigma" -v thr="$threshold_sd" -v samples="$samples" 'BEGIN {
  printf "{\n  \"samples\": %d,\n  \"duration_s\": %.3f,\n  \"noise_sigma_uv\": %.3f,\n  \"threshold_uv\": %.3f,\n  \"spikes\": %d,\n  \"rate_hz\": %.3f\n}\n",
    samples, d / 1000, s, -thr * s, n, (d > 0 ? n / (d / 1000) : 0) }' >"$out/summary.json"
# 4. the plot: the filtered trace as a min/max envelope of 1,000 columns, the threshold line,
#    and a red mark at each spike (SVG, drawn here so the image needs nothing but awk).
awk -F, -v thr="$threshold_sd" -v sigma="$sigma" -v spikes="$out/spikes.csv" '
  { n++; t[n] = $1 + 0; x[n] = $2 + 0; if (x[n] < lo) lo = x[n]; if (x[n] > hi) hi = x[n] }
  END {
    W = 1000; H = 300; L = 50; B = 20; cols = 1000
    level = -thr * sigma; if (level < lo) lo = level
    if (hi == lo) hi = lo + 1
    t0 = t[1]; t1 = t[n]; if (t1 == t0) t1 = t0 + 1
    printf "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\">\n", W + L, H + B, W + L, H + B
    printf "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
    printf "<text x=\"4\" y=\"14\" font-size=\"12\" font-family=\"sans-serif\">%.0f uV</text>\n", hi
    printf "<text x=\"4\" y=\"%d\" font-size=\"12\" font-family=\"sans-serif\">%.0f uV</text>\n", H, lo
    printf "<text x=\"%d\" y=\"%d\" font-size=\"12\" font-family=\"sans-serif\">%.0f ms</text>\n", W, H + 16, t1
    printf "<path fill=\"none\" stroke=\"#1f4e79\" stroke-width=\"1\" d=\""
    per = n / cols; if (per < 1) per = 1
    for (c = 0; c * per < n; c++) {
      a = int(c * per) + 1; b = int((c + 1) * per); if (b > n) b = n
      mn = x[a]; mx = x[a]
      for (i = a; i <= b; i++) { if (x[i] < mn) mn = x[i]; if (x[i] > mx) mx = x[i] }
      px = L + (t[a] - t0) / (t1 - t0) * W
      printf "%s%.1f %.1fL%.1f %.1f", (c ? "L" : "M"), px, (hi - mx) / (hi - lo) * H, px, (hi - mn) / (hi - lo) * H
    }
    printf "\"/>\n"
    y = (hi - level) / (hi - lo) * H
    printf "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#999\" stroke-dasharray=\"4 3\"/>\n", L, L + W, y, y
    while ((getline line < spikes) > 0) {
      if (line ~ /^time_ms/) continue
      split(line, f, ","); px = L + (f[1] - t0) / (t1 - t0) * W; py = (hi - f[2]) / (hi - lo) * H
      printf "<circle class=\"spike\" cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"#c0392b\"/>\n", px, py
    }
    printf "</svg>\n"
  }' "$work/filtered.csv" >"$out/spikes.svg"
echo "detect: ${n_spikes} spikes in ${duration_ms} ms"
if [ "$n_spikes" -eq 0 ]; then echo "detect: warning: no spike crossed the threshold" >&2; fi
