// Run one MicroPython script in the 32-bit WebAssembly VM (npm
// @micropython/micropython-webassembly-pyscript) under Node.
//
//   node wasm_driver.mjs [--heapsize N[K|M]] [--pystack N] [--lib DIR]... [--stdin]
//                        [--prelude FILE] [--no-guard] SCRIPT
//
// --lib DIR   copy the tree DIR (symlinks followed; __pycache__ and *.pyc skipped) into the
//             VM's /lib, which is on sys.path: a staging dir holding metal/core/... makes
//             `import metal.core.x` work. Repeatable.
// --stdin     give the VM a blocking byte pipe on sys.stdin (fs.readSync on fd 0).
// --prelude FILE  run FILE first, in the script's globals (its own line numbers).
// --no-guard  run the script with mp.runPython directly instead of inside guard.upy.
//
// The VM's stdout goes to stdout byte for byte (flushed at every newline, synchronously, so
// output before a hang is not lost); a Python exception is printed on stderr as a traceback
// and the exit status is 1; sys.exit(n) exits with n. Driver errors exit with 64 (usage),
// 69 (VM package not found) or 70 (internal error).
//
// --heapsize is the VM's initial GC heap: this (pyscript) build grows it on demand, so it is
// not a memory limit (the unix port's -X heapsize is).
//
// The guard (guard.upy, next to this file): an uncaught MemoryError while the heap is locked
// hangs this VM at 100 % CPU (formatting the traceback needs the heap). The script therefore
// runs inside exec(compile(src, SCRIPT, "exec")) in a try that unlocks the heap completely
// before printing the traceback on stderr (exit status 1). Line numbers are kept. It is a
// safety net only: tests must still unlock in `finally`, and the caller must still run this
// driver under a timeout.

import fs from "node:fs";
import path from "node:path";
import { createRequire } from "node:module";
import { fileURLToPath, pathToFileURL } from "node:url";

const PKG = "@micropython/micropython-webassembly-pyscript";
const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(HERE, "..", "..");  // host/mpvm -> the checkout

function usage(msg) {
  process.stderr.write(`wasm_driver: ${msg}\n`);
  process.exit(64);
}

function parseSize(text) {
  const m = /^(\d+)([kKmM]?)$/.exec(text || "");
  if (!m) usage(`bad size: ${text}`);
  const mult = { "": 1, k: 1024, m: 1024 * 1024 }[m[2].toLowerCase()];
  return parseInt(m[1], 10) * mult;
}

function parseArgs(argv) {
  const opts = { heapsize: 512 * 1024, pystack: 2048, libs: [], stdin: false, guard: true, prelude: null, script: null };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--heapsize") opts.heapsize = parseSize(argv[++i]);
    else if (a === "--pystack") opts.pystack = parseSize(argv[++i]);
    else if (a === "--lib") opts.libs.push(argv[++i]);
    else if (a === "--stdin") opts.stdin = true;
    else if (a === "--prelude") opts.prelude = argv[++i];
    else if (a === "--no-guard") opts.guard = false;
    else if (a.startsWith("--")) usage(`unknown option ${a}`);
    else if (opts.script === null) opts.script = a;
    else usage(`unexpected argument ${a}`);
  }
  if (opts.script === null) usage("no script given");
  if (!fs.statSync(opts.script, { throwIfNoEntry: false })?.isFile()) usage(`${opts.script}: no such file`);
  if (opts.prelude !== null && !fs.statSync(opts.prelude || "", { throwIfNoEntry: false })?.isFile()) {
    usage(`--prelude ${opts.prelude}: no such file`);
  }
  for (const lib of opts.libs) {
    if (!lib || !fs.statSync(lib, { throwIfNoEntry: false })?.isDirectory()) usage(`--lib ${lib}: not a directory`);
  }
  return opts;
}

async function loadPackage() {
  // $METAL_WASM_PACKAGE (set by metal.host.mpvm) names the package's micropython.mjs;
  // otherwise resolve from the repository root (where `npm ci` puts node_modules), then here.
  let resolved = process.env.METAL_WASM_PACKAGE || null;
  if (resolved && !fs.existsSync(resolved)) resolved = null;
  for (const base of [path.join(REPO_ROOT, "package.json"), import.meta.url]) {
    if (resolved !== null) break;
    try {
      resolved = createRequire(base).resolve(PKG);
      break;
    } catch {
      // try the next base
    }
  }
  if (resolved === null) {
    process.stderr.write(`wasm_driver: cannot resolve ${PKG} from ${REPO_ROOT} (run npm ci)\n`);
    process.exit(69);
  }
  return import(pathToFileURL(resolved).href);
}

// Byte sink that flushes synchronously at newlines and when the buffer fills.
function makeSink(fd) {
  const buf = Buffer.alloc(8192);
  let n = 0;
  const flush = () => {
    let off = 0;
    while (off < n) {
      try {
        off += fs.writeSync(fd, buf, off, n - off);
      } catch (e) {
        if (e.code !== "EAGAIN") throw e;
      }
    }
    n = 0;
  };
  const put = (bytes) => {
    for (const c of bytes) {
      buf[n++] = c;
      if (c === 10 || n === buf.length) flush();
    }
  };
  return { put, flush };
}

function copyTree(FS, src, dst) {
  try {
    FS.mkdir(dst);
  } catch {
    // exists already (e.g. /lib, or two --lib trees sharing metal/)
  }
  for (const name of fs.readdirSync(src)) {
    if (name === "__pycache__" || name.endsWith(".pyc")) continue;
    const from = path.join(src, name);
    const to = `${dst}/${name}`;
    const st = fs.statSync(from); // follows symlinks
    if (st.isDirectory()) copyTree(FS, from, to);
    else if (st.isFile()) FS.writeFile(to, fs.readFileSync(from));
  }
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const source = fs.readFileSync(opts.script);
  const { loadMicroPython } = await loadPackage();

  const out = makeSink(1);
  const err = makeSink(2);
  const config = {
    heapsize: opts.heapsize,
    pystack: opts.pystack,
    linebuffer: false,
    stdout: (bytes) => out.put(bytes),
    stderr: (bytes) => err.put(bytes),
  };
  if (opts.stdin) {
    const one = Buffer.alloc(1);
    config.stdin = () => {
      for (;;) {
        try {
          return fs.readSync(0, one, 0, 1, null) === 1 ? one[0] : null;
        } catch (e) {
          if (e.code !== "EAGAIN") return null;
        }
      }
    };
  }
  const mp = await loadMicroPython(config);

  for (const lib of opts.libs) copyTree(mp.FS, lib, "/lib");
  // Not in "/" (the cwd, first on sys.path), so a script name cannot shadow a module.
  mp.FS.mkdir("/run");
  const scriptPath = "/run/" + path.basename(opts.script);
  mp.FS.writeFile(scriptPath, source);
  const prelude = opts.prelude === null ? null : fs.readFileSync(opts.prelude);
  const preludePath = "/run/_metal_prelude.py";
  if (prelude !== null) mp.FS.writeFile(preludePath, prelude);

  let status = 0;
  try {
    if (opts.guard) {
      mp.runPython(fs.readFileSync(path.join(HERE, "guard.upy"), "utf8"));
      const args = [scriptPath, ...(prelude === null ? [] : [preludePath])].map((a) => JSON.stringify(a));
      mp.runPython(`_metal_guard(${args.join(", ")})`);
    } else {
      mp.runPython((prelude === null ? "" : prelude.toString("utf8") + "\n") + source.toString("utf8"));
    }
  } catch (error) {
    if (error?.name !== "PythonError") throw error;
    if (error.type === "SystemExit") {
      status = exitStatus(error.message, err);
    } else {
      out.flush();
      err.put(Buffer.from(error.message.endsWith("\n") ? error.message : error.message + "\n"));
      status = 1;
    }
  }
  out.flush();
  err.flush();
  process.exitCode = status;
}

// The PythonError carries only the type and the traceback text, whose last line is
// "SystemExit: <arg>": sys.exit() -> 0, sys.exit(n) -> n, sys.exit("msg") -> msg on stderr, 1.
function exitStatus(message, err) {
  const lines = message.trimEnd().split("\n");
  const last = lines[lines.length - 1];
  const arg = last.startsWith("SystemExit:") ? last.slice("SystemExit:".length).trim() : "";
  if (arg === "" || arg === "None") return 0;
  if (/^-?\d+$/.test(arg)) return parseInt(arg, 10) & 0xff;
  err.put(Buffer.from(arg + "\n"));
  return 1;
}

main().catch((e) => {
  process.stderr.write(`wasm_driver: ${e?.stack || e}\n`);
  process.exit(70);
});
