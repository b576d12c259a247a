// A real hub process for the tests, and the CLI beside it.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { WebSocket } from "ws";
import { Client, type ConnectOptions } from "../src/index.js";

/** The `switchboard` binary: $SWITCHBOARD_BIN, else the workspace's debug build. */
export const BIN =
  process.env.SWITCHBOARD_BIN ?? new URL("../../../../target/debug/switchboard", import.meta.url).pathname;

export const TOKEN = "typescript-client-test-token";

/** Fails a promise that takes longer than `ms`. */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout>;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
    }),
  ]);
}

/** Stops a child process (SIGTERM, then SIGKILL after 5 s) and waits for its exit. */
export async function stopProcess(proc: ChildProcess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise((r) => proc.once("exit", r));
  proc.kill("SIGTERM");
  await within(exited, 5_000, "stop").catch(async () => {
    proc.kill("SIGKILL");
    await exited;
  });
}

/** A hub process with its own runtime directory and token. */
export class Hub {
  private constructor(
    readonly proc: ChildProcess,
    readonly dir: string,
    readonly addr: string,
    readonly http: string,
  ) {}

  /** The WebSocket URL. */
  get url(): string {
    return `ws://${this.http}/v1/ws`;
  }

  /** The environment for the hub and the CLI. */
  static env(dir: string): NodeJS.ProcessEnv {
    return { ...process.env, SWITCHBOARD_RUNTIME_DIR: dir, SWITCHBOARD_TOKEN: TOKEN, SWITCHBOARD_LOG: "warn", RUST_BACKTRACE: "0" };
  }

  /**
   * Starts `switchboard hub` on loopback and waits for its ready line;
   * `config` is the text of a configuration file for it (TOML, e.g.
   * `[hub]\nkeepalive_ms = 300`).
   */
  static async start(config?: string): Promise<Hub> {
    if (!existsSync(BIN)) {
      throw new Error(`${BIN} is missing: run \`cargo build -p switchboard --bin switchboard\` first, or set SWITCHBOARD_BIN`);
    }
    const dir = mkdtempSync(join(tmpdir(), "sb-ts-"));
    const configArgs: string[] = [];
    if (config !== undefined) {
      writeFileSync(join(dir, "hub.toml"), config);
      configArgs.push("--config", join(dir, "hub.toml"));
    }
    const proc = spawn(
      BIN,
      ["--json", "hub", ...configArgs, "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--no-unix"],
      { env: Hub.env(dir), stdio: ["ignore", "pipe", "inherit"] },
    );
    const lines = createInterface({ input: proc.stdout! });
    const ready = await within(
      new Promise<{ addr: string; http: string }>((resolve, reject) => {
        lines.once("line", (l) => resolve(JSON.parse(l)));
        proc.once("exit", (code) => reject(new Error(`the hub exited (${code}) before its ready line`)));
      }),
      20_000,
      "hub start",
    );
    return new Hub(proc, dir, ready.addr, ready.http);
  }

  /** Connects a client with the test token over `ws`. */
  connect(clientId: string, extra: Partial<ConnectOptions> = {}): Promise<Client> {
    return Client.connect({
      url: this.url,
      clientId,
      token: TOKEN,
      WebSocket: WebSocket,
      connectTimeoutMs: 5_000,
      ...extra,
    });
  }

  /** Runs a CLI command against this hub and returns its standard output. */
  cli(args: string[], timeoutMs = 15_000): Promise<{ code: number | null; stdout: string; stderr: string }> {
    return within(
      new Promise((resolve) => {
        const p = spawn(BIN, ["--addr", this.addr, ...args], { env: Hub.env(this.dir) });
        let stdout = "";
        let stderr = "";
        p.stdout.on("data", (d) => (stdout += d));
        p.stderr.on("data", (d) => (stderr += d));
        p.on("exit", (code) => resolve({ code, stdout, stderr }));
      }),
      timeoutMs,
      `switchboard ${args.join(" ")}`,
    );
  }

  /** Starts a long-running CLI command and resolves once it printed its JSON ready line on stderr. */
  async cliBackground(args: string[]): Promise<{ proc: ChildProcess; stdout: () => string; exited: Promise<number | null> }> {
    const p = spawn(BIN, ["--addr", this.addr, "--json", ...args], { env: Hub.env(this.dir) });
    let stdout = "";
    p.stdout.on("data", (d) => (stdout += d));
    const exited = new Promise<number | null>((r) => p.on("exit", (c) => r(c)));
    await within(
      new Promise<void>((resolve, reject) => {
        createInterface({ input: p.stderr }).on("line", (l) => {
          if (l.includes('"ready"')) resolve();
        });
        p.once("exit", (c) => reject(new Error(`switchboard ${args.join(" ")} exited (${c}) before it was ready`)));
      }),
      15_000,
      `switchboard ${args.join(" ")} ready`,
    );
    return { proc: p, stdout: () => stdout, exited };
  }

  /** Stops the hub and removes its directory. */
  async stop(): Promise<void> {
    await stopProcess(this.proc);
    rmSync(this.dir, { recursive: true, force: true });
  }
}
