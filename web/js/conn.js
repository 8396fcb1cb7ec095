// The chat connection: reconnects with backoff and jitter, heartbeats, resends what was not
// acknowledged (same client id, so the server stores it once), and reports gaps by seq.

const HEARTBEAT_MS = 25000;

export class Connection {
  constructor({ onFrame, onState }) {
    this.onFrame = onFrame;
    this.onState = onState;
    this.pending = new Map(); // client id -> frame awaiting its ack
    this.ws = null;
    this.attempt = 0;
    this.stopped = true;
    this.timer = null;
    this.beat = null;
  }

  start(user) {
    this.user = user;
    this.stopped = false;
    this.open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.beat);
    if (this.ws) this.ws.close(1000);
    this.ws = null;
  }

  open() {
    if (this.stopped) return;
    this.onState("connecting");
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const q = new URLSearchParams({ id: String(this.user.id), token: this.user.token });
    const ws = new WebSocket(`${scheme}://${location.host}/chat?${q}`);
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      this.onState("online");
      clearInterval(this.beat);
      this.beat = setInterval(() => this.raw({ cmd: 0 }), HEARTBEAT_MS);
      for (const frame of this.pending.values()) this.raw(frame);
    };
    ws.onmessage = (event) => {
      let frame;
      try { frame = JSON.parse(event.data); } catch { return; }
      if (frame.cmd === 20 || frame.cmd === 21) this.pending.delete(String(frame.id));
      this.onFrame(frame);
    };
    ws.onclose = (event) => {
      clearInterval(this.beat);
      if (this.ws !== ws) return;
      this.ws = null;
      if (event.code === 1008) { this.onState("revoked"); return; }
      this.onState("offline");
      this.retry();
    };
  }

  retry() {
    if (this.stopped) return;
    const base = Math.min(30000, 500 * 2 ** this.attempt);
    this.attempt += 1;
    const delay = base / 2 + Math.random() * base / 2;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.open(), delay);
  }

  raw(frame) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(frame));
  }

  // Send a message; it stays pending (and is resent after a reconnect) until acked.
  send(frame) {
    this.pending.set(String(frame.id), frame);
    this.raw(frame);
  }
}
