# Sourced by run_dmv.sh, run_trace.sh and run_ncu.sh.
# dmv_env VARIANT -> the env assignments of a matvec variant: a base, then
# suffixes joined by "_". Bases: dmv = our dense matvec behind fast::linear alone (MLXENGINE_CUDA_DMV=1,
# MLXENGINE_CUDA_QMV_DENSE=0); fdmv = it and the fused dense layers (both 1, the default); mlxgemv = MLX's gemv
# (both 0, the default before session 11); base = the engine as shipped. Suffixes: sk1 / sk2 / sk4 warps a row
# forced (MLXENGINE_CUDA_DMV_SK), r2 rows a warp (MLXENGINE_CUDA_DMV_RPW), u1 / u2 / u4 / u8 chunks in flight a lane (MLXENGINE_CUDA_DMV_U), w6 row groups
# split down to 6 waves (MLXENGINE_CUDA_DMV_WAVES), t128 128 threads a block (MLXENGINE_CUDA_DMV_THREADS), s32 /
# s128 / … the fewest slots a split of the decode attention (MLXENGINE_CUDA_ATTN_SLOTS, default 64).
dmv_env() {
  local e="" t parts
  IFS=_ read -ra parts <<< "$1"
  set -- "${parts[@]}"
  case $1 in
    dmv) e="MLXENGINE_CUDA_DMV=1 MLXENGINE_CUDA_QMV_DENSE=0" ;;
    fdmv) e="MLXENGINE_CUDA_DMV=1 MLXENGINE_CUDA_QMV_DENSE=1" ;;
    mlxgemv) e="MLXENGINE_CUDA_DMV=0 MLXENGINE_CUDA_QMV_DENSE=0" ;;
    base) ;;
    *) echo "MLXENGINE_UNKNOWN_VARIANT=$1"; return ;;
  esac
  shift
  for t in "$@"; do
    case $t in
      sk[0-9]*) e="$e MLXENGINE_CUDA_DMV_SK=${t#sk}" ;;
      r[0-9]*) e="$e MLXENGINE_CUDA_DMV_RPW=${t#r}" ;;
      u[0-9]*) e="$e MLXENGINE_CUDA_DMV_U=${t#u}" ;;
      s[0-9]*) e="$e MLXENGINE_CUDA_ATTN_SLOTS=${t#s}" ;;
      w[0-9]*) e="$e MLXENGINE_CUDA_DMV_WAVES=${t#w}" ;;
      t[0-9]*) e="$e MLXENGINE_CUDA_DMV_THREADS=${t#t}" ;;
      *) e="$e MLXENGINE_UNKNOWN_SUFFIX=$t" ;;
    esac
  done
  echo $e
}

# run NAME ROUND CMD...: runs a bench command (at most 200 s) and appends its last JSON line to $OUT/decode.jsonl
# as {"run": NAME, "round": ROUND, "result": …} (null, after its stderr's tail, where it printed none).
run() {
  local name=$1 round=$2 line; shift 2
  line=$(timeout 200 "$@" 2>/tmp/bench_run.err | grep '^{' | tail -1)
  [ -n "$line" ] || tail -3 /tmp/bench_run.err
  echo "{\"run\": \"$name\", \"round\": $round, \"result\": ${line:-null}}" | tee -a $OUT/decode.jsonl
}
