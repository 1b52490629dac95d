# Source me: puts forge, anvil and cast (npm packages in node_modules) on PATH.
_contracts_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for _t in forge anvil cast; do
  PATH="$_contracts_dir/node_modules/@foundry-rs/$_t-linux-amd64/bin:$PATH"
done
export PATH
unset _t _contracts_dir
