// The lanchat browser client: screens, chat view and composer. Text is never inserted as HTML:
// every message field reaches the page through Vue's escaped interpolation or as a media URL.

import { createApp, reactive, computed, nextTick } from "./vendor/vue.esm-browser.prod.js";
import { call, upload, session, ApiError } from "./api.js";
import { Connection } from "./conn.js";
import { t, EMOJI } from "./i18n.js";

const state = reactive({
  user: session.user,
  view: session.user ? "main" : "login",
  tab: "chats",
  conn: "offline",
  friends: [],
  communities: [],
  conversations: [],
  users: {},
  chat: null,
  messages: {},
  more: {},
  peerRead: {},
  toast: "",
  panel: "",
  progress: null,
  recording: null,
});

const convKey = (cmd, dstid) => `${cmd}:${dstid}`;
const newId = () => `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
let toastTimer = null;

function toast(text) {
  state.toast = text;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { state.toast = ""; }, 4000);
}

function failed(err) {
  toast(err instanceof ApiError ? err.message : String(err));
  if (err instanceof ApiError && err.status === 401) logoutLocal();
}

// ---- data ----------------------------------------------------------------------------------

async function loadLists() {
  try {
    const [friends, communities, conversations] = await Promise.all([
      call("/contact/loadfriend", {}, { method: "GET" }),
      call("/contact/loadcommunity", {}, { method: "GET" }),
      call("/message/conversations", {}, { method: "GET" }),
    ]);
    state.friends = friends.rows;
    state.communities = communities.rows;
    state.conversations = conversations.rows;
    for (const f of friends.rows) state.users[f.id] = f;
  } catch (err) { failed(err); }
}

let listTimer = null;
function refreshLists() {
  clearTimeout(listTimer);
  listTimer = setTimeout(loadLists, 150);
}

async function userInfo(id) {
  if (state.users[id]) return state.users[id];
  state.users[id] = { id, nickname: `#${id}`, avatar: "" };
  try { state.users[id] = (await call("/user/find", { id }, { method: "GET" })).data; } catch { /* keep the placeholder */ }
  return state.users[id];
}

function addMessage(key, msg) {
  const list = state.messages[key] || (state.messages[key] = []);
  if (msg.mid && list.some((m) => m.mid === msg.mid)) return;
  const mine = msg.userid === state.user.id && msg.id !== undefined;
  if (mine) {
    const local = list.find((m) => m.pending && String(m.id) === String(msg.id));
    if (local) { Object.assign(local, msg, { pending: false }); return; }
  }
  list.push(msg);
  list.sort((a, b) => (a.seq || Infinity) - (b.seq || Infinity));
  if (msg.userid) userInfo(msg.userid);
}

function lastSeq(key) {
  const list = state.messages[key] || [];
  let seq = 0;
  for (const m of list) if (m.seq && m.seq > seq) seq = m.seq;
  return seq;
}

async function fetchAfter(cmd, dstid) {
  const key = convKey(cmd, dstid);
  for (;;) {
    const after = lastSeq(key);
    const page = await call("/message/history", { cmd, dstid, after, limit: 100 }, { method: "GET" });
    page.rows.forEach((m) => addMessage(key, m));
    if (page.rows.length < 100) break;
  }
}

async function openChat(cmd, dstid) {
  const key = convKey(cmd, dstid);
  const title = cmd === 10 ? (state.users[dstid] || {}).nickname || `#${dstid}`
    : ((state.communities.find((c) => c.id === dstid) || {}).name || `#${dstid}`);
  state.chat = { cmd, dstid, key, title };
  state.view = "chat";
  state.panel = "";
  try {
    if (!state.messages[key] || !state.messages[key].length) {
      const page = await call("/message/history", { cmd, dstid, limit: 30 }, { method: "GET" });
      page.rows.forEach((m) => addMessage(key, m));
      state.more[key] = page.rows.length === 30;
    } else {
      await fetchAfter(cmd, dstid);
    }
    const conv = state.conversations.find((c) => c.cmd === cmd && c.dstid === dstid);
    if (conv && cmd === 10) userInfo(dstid);
    await markRead();
  } catch (err) { failed(err); }
  scrollDown();
}

async function loadEarlier() {
  const { cmd, dstid, key } = state.chat;
  const list = state.messages[key] || [];
  const first = list.find((m) => m.seq);
  if (!first) return;
  const page = await call("/message/history", { cmd, dstid, before: first.seq, limit: 30 }, { method: "GET" });
  page.rows.forEach((m) => addMessage(key, m));
  state.more[key] = page.rows.length === 30;
}

async function markRead() {
  if (!state.chat || document.hidden) return;
  const { cmd, dstid, key } = state.chat;
  const seq = lastSeq(key);
  const conv = state.conversations.find((c) => c.cmd === cmd && c.dstid === dstid);
  if (!seq || (conv && conv.read_seq >= seq)) return;
  try {
    await call("/message/read", { cmd, dstid, seq });
    if (conv) { conv.read_seq = seq; conv.unread = 0; }
  } catch (err) { failed(err); }
}

function scrollDown() {
  nextTick(() => {
    const box = document.querySelector(".messages");
    if (box) box.scrollTop = box.scrollHeight;
  });
}

// ---- the connection -------------------------------------------------------------------------

const conn = new Connection({
  onState(value) {
    if (value === "revoked") { logoutLocal(); return; }
    const was = state.conn;
    state.conn = value;
    if (value === "online" && was !== "online") {
      loadLists();
      if (state.chat) fetchAfter(state.chat.cmd, state.chat.dstid).then(markRead).catch(failed);
    }
  },
  onFrame(frame) {
    if (frame.cmd === 10 || frame.cmd === 11) {
      const other = frame.cmd === 11 ? frame.dstid : (frame.userid === state.user.id ? frame.dstid : frame.userid);
      const key = convKey(frame.cmd, other);
      const before = lastSeq(key);
      addMessage(key, frame);
      if (before && frame.seq > before + 1) fetchAfter(frame.cmd, other).catch(failed);
      refreshLists();
      if (state.chat && state.chat.key === key) { scrollDown(); markRead(); }
    } else if (frame.cmd === 20) {
      const list = state.chat ? state.messages[state.chat.key] || [] : [];
      for (const msgs of Object.values(state.messages)) {
        const local = msgs.find((m) => m.pending && String(m.id) === String(frame.id));
        if (local) {
          Object.assign(local, { mid: frame.mid, seq: frame.seq, createat: frame.createat, pending: false });
          msgs.sort((a, b) => (a.seq || Infinity) - (b.seq || Infinity));
        }
      }
      if (list.length) refreshLists();
    } else if (frame.cmd === 21) {
      for (const msgs of Object.values(state.messages)) {
        const local = msgs.find((m) => m.pending && String(m.id) === String(frame.id));
        if (local) { local.pending = false; local.failed = frame.msg; }
      }
      toast(frame.msg);
    } else if (frame.cmd === 30) {
      if (frame.event === "profile_updated") delete state.users[frame.dstid];
      refreshLists();
    } else if (frame.cmd === 31) {
      if (frame.kind === 10 && frame.userid !== state.user.id) {
        state.peerRead[convKey(10, frame.userid)] = frame.seq;
      } else {
        refreshLists();
      }
    }
  },
});

function sendMessage(fields) {
  const { cmd, dstid, key } = state.chat;
  const frame = { id: newId(), cmd, dstid, ...fields };
  addMessage(key, { ...frame, userid: state.user.id, pending: true, createat: Date.now() });
  conn.send(frame);
  state.panel = "";
  scrollDown();
}

function resend(msg) {
  msg.failed = "";
  msg.pending = true;
  const { pending, failed: _f, userid, createat, ...frame } = msg;
  conn.send(frame);
}

// ---- accounts -------------------------------------------------------------------------------

function loggedIn(user) {
  session.user = user;
  state.user = user;
  state.view = "main";
  state.tab = "chats";
  conn.start(user);
  loadLists();
}

function logoutLocal() {
  conn.stop();
  session.user = null;
  state.user = null;
  state.view = "login";
  state.messages = {};
  state.chat = null;
}

async function pickAndUpload(accept, capture) {
  const input = document.createElement("input");
  input.type = "file";
  input.accept = accept;
  if (capture) input.capture = capture;
  return new Promise((resolve) => {
    input.onchange = async () => {
      const file = input.files[0];
      if (!file) return resolve(null);
      resolve(await uploadWithProgress(file));
    };
    input.click();
  });
}

async function uploadWithProgress(file) {
  state.progress = 0;
  try {
    return await upload(file, (p) => { state.progress = p; });
  } catch (err) {
    toast(`${t.uploadFailed}: ${err.message}`);
    return null;
  } finally {
    state.progress = null;
  }
}

// ---- voice ----------------------------------------------------------------------------------

async function startRecording() {
  if (state.recording) return;
  let stream;
  try { stream = await navigator.mediaDevices.getUserMedia({ audio: true }); } catch { toast(t.micDenied); return; }
  const recorder = new MediaRecorder(stream);
  const chunks = [];
  const started = Date.now();
  const rec = { recorder, seconds: 0, timer: setInterval(() => { rec.seconds = Math.round((Date.now() - started) / 1000); }, 250) };
  state.recording = rec;
  recorder.ondataavailable = (e) => { if (e.data.size) chunks.push(e.data); };
  recorder.onstop = async () => {
    clearInterval(rec.timer);
    stream.getTracks().forEach((track) => track.stop());
    state.recording = null;
    const seconds = Math.max(1, Math.min(600, Math.round((Date.now() - started) / 1000)));
    const blob = new Blob(chunks, { type: recorder.mimeType || "audio/webm" });
    const url = await uploadWithProgress(new File([blob], "voice.webm", { type: blob.type }));
    if (url) sendMessage({ media: 3, url, amount: seconds });
  };
  recorder.start(250);
}

function stopRecording() {
  if (state.recording) state.recording.recorder.stop();
}

// ---- components ---------------------------------------------------------------------------

const Avatar = {
  props: ["user", "size"],
  template: `<span class="avatar" :style="{width: (size||40)+'px', height: (size||40)+'px'}">
    <img v-if="user && user.avatar" :src="user.avatar" alt="">
    <span v-else>{{ ((user && user.nickname) || '?').slice(0, 1) }}</span></span>`,
};

const Bubble = {
  props: ["msg"],
  components: { Avatar },
  setup() { return { t, state, resend, openCard }; },
  computed: {
    mine() { return this.msg.userid === state.user.id; },
    sender() { return state.users[this.msg.userid] || { nickname: `#${this.msg.userid}` }; },
    time() { return this.msg.createat ? new Date(this.msg.createat).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }) : ""; },
    yuan() { return ((this.msg.amount || 0) / 100).toFixed(2); },
    read() { return this.mine && state.chat && state.chat.cmd === 10 && this.msg.seq && (state.peerRead[state.chat.key] || 0) >= this.msg.seq; },
    cardUser() { return state.users[Number(this.msg.content)] || null; },
    extra() {
      const { cmd, dstid, media, userid, mid, seq, createat, id, pending, failed, ...rest } = this.msg;
      return rest;
    },
  },
  template: `<div class="row" :class="{mine}" :data-seq="msg.seq" :data-media="msg.media">
    <Avatar :user="mine ? state.user : sender" :size="36"/>
    <div class="body">
      <div class="meta"><span v-if="!mine && state.chat.cmd === 11" class="who">{{ sender.nickname }}</span>
        <span class="time">{{ time }}</span><span v-if="read" class="read">{{ t.read }}</span></div>
      <div class="bubble" :class="'m' + msg.media">
        <template v-if="msg.media === 1"><span class="text">{{ msg.content }}</span></template>
        <template v-else-if="msg.media === 2">
          <a class="news" :href="msg.url" target="_blank" rel="noopener noreferrer">
            <img v-if="msg.pic" :src="msg.pic" alt=""><b>{{ msg.content }}</b><small v-if="msg.memo">{{ msg.memo }}</small></a>
        </template>
        <template v-else-if="msg.media === 3"><audio controls preload="metadata" :src="msg.url"></audio>
          <small>{{ msg.amount }}{{ t.seconds }}</small></template>
        <template v-else-if="msg.media === 4"><img class="photo" :src="msg.url" alt=""></template>
        <template v-else-if="msg.media === 5"><div class="redpacket">🧧 <b>{{ t.redPacketFrom }} ¥{{ yuan }}</b>
          <small>{{ msg.memo || t.wishDefault }}</small></div></template>
        <template v-else-if="msg.media === 6"><img v-if="msg.url" class="emoji-img" :src="msg.url" alt="">
          <span v-else class="emoji-big">{{ msg.content }}</span></template>
        <template v-else-if="msg.media === 7"><a :href="msg.url" target="_blank" rel="noopener noreferrer">🔗 {{ msg.url }}</a></template>
        <template v-else-if="msg.media === 8"><video controls preload="metadata" :poster="msg.pic || null" :src="msg.url"></video></template>
        <template v-else-if="msg.media === 9"><div class="card" @click="openCard(msg)">
          <img v-if="msg.pic" :src="msg.pic" alt=""><b>{{ msg.memo || ('#' + msg.content) }}</b>
          <small>{{ t.contactCard }} · ID {{ msg.content }}</small></div></template>
        <template v-else><div class="custom"><b>{{ t.customMessage }}</b>
          <span v-if="msg.content" class="text">{{ msg.content }}</span>
          <code v-if="Object.keys(extra).length">{{ JSON.stringify(extra) }}</code></div></template>
      </div>
      <div v-if="msg.pending" class="state">…</div>
      <div v-if="msg.failed" class="state failed">{{ t.failed }}: {{ msg.failed }} <button @click="resend(msg)">{{ t.retry }}</button></div>
    </div></div>`,
};

function openCard(msg) {
  const id = Number(msg.content);
  if (id && id !== state.user.id && !state.friends.some((f) => f.id === id)) {
    call("/contact/addfriend", { dstid: id }).then(() => { toast(t.saved); loadLists(); }).catch(failed);
  }
}

const App = {
  components: { Avatar, Bubble },
  setup() {
    const form = reactive({ mobile: "", passwd: "", nickname: "", sex: "U", avatar: "", friend: "", community: "",
      cname: "", cicon: "", ccate: 0, cmemo: "", text: "", url: "", title: "", pic: "", amount: "", memo: "",
      pnick: "", pmemo: "", psex: "U", pavatar: "", pnew: "", pold: "" });
    const chatMessages = computed(() => (state.chat ? state.messages[state.chat.key] || [] : []));
    const unreadTotal = computed(() => state.conversations.reduce((n, c) => n + c.unread, 0));
    const conversationRows = computed(() => state.conversations.map((c) => ({
      ...c,
      key: convKey(c.cmd, c.dstid),
      title: c.cmd === 10 ? ((state.users[c.dstid] || {}).nickname || `#${c.dstid}`)
        : ((state.communities.find((x) => x.id === c.dstid) || {}).name || `#${c.dstid}`),
      who: c.cmd === 10 ? state.users[c.dstid] : { nickname: (state.communities.find((x) => x.id === c.dstid) || {}).name, avatar: (state.communities.find((x) => x.id === c.dstid) || {}).icon },
      preview: c.last ? preview(c.last) : "",
    })));

    function preview(m) {
      const labels = { 2: t.news, 3: t.voice, 4: t.image, 5: t.redPacket, 6: t.emoji, 7: t.link, 8: t.video, 9: t.card };
      if (m.media === 1) return m.content;
      if (m.media === 6 && m.content) return m.content;
      return `[${labels[m.media] || t.customMessage}]`;
    }

    async function doLogin() {
      try { loggedIn((await call("/user/login", { mobile: form.mobile, passwd: form.passwd })).data); } catch (err) { failed(err); }
    }
    async function doRegister() {
      try {
        loggedIn((await call("/user/register", { mobile: form.mobile, passwd: form.passwd, nickname: form.nickname, sex: form.sex, avatar: form.avatar })).data);
      } catch (err) { failed(err); }
    }
    async function pickAvatar(field) {
      const url = await pickAndUpload("image/*");
      if (url) form[field] = url;
    }
    async function addFriend() {
      try { await call("/contact/addfriend", { dstid: form.friend }); form.friend = ""; toast(t.saved); loadLists(); } catch (err) { failed(err); }
    }
    async function joinCommunity() {
      try { await call("/contact/joincommunity", { dstid: form.community }); form.community = ""; toast(t.saved); loadLists(); } catch (err) { failed(err); }
    }
    async function createCommunity() {
      try {
        const c = (await call("/contact/createcommunity", { name: form.cname, icon: form.cicon, cate: Number(form.ccate), memo: form.cmemo })).data;
        form.cname = ""; form.cicon = ""; form.cmemo = "";
        toast(`${t.youAreIn} ${c.name} (#${c.id})`);
        loadLists();
      } catch (err) { failed(err); }
    }
    async function leaveCommunity(id) {
      try { await call("/contact/leavecommunity", { dstid: id }); state.view = "main"; loadLists(); } catch (err) { failed(err); }
    }
    function editProfile() {
      Object.assign(form, { pnick: state.user.nickname, pmemo: state.user.memo, psex: state.user.sex, pavatar: state.user.avatar, pnew: "", pold: "" });
      state.panel = "profile";
    }
    async function saveProfile() {
      const fields = { nickname: form.pnick, memo: form.pmemo, sex: form.psex, avatar: form.pavatar };
      if (form.pnew) Object.assign(fields, { passwd: form.pnew, oldpasswd: form.pold });
      try {
        const data = (await call("/user/update", fields)).data;
        loggedInKeep(data);
        state.panel = "";
        toast(t.saved);
      } catch (err) { failed(err); }
    }
    function loggedInKeep(data) {
      const user = { ...state.user, ...data };
      session.user = user;
      state.user = user;
    }
    async function logout() {
      try { await call("/user/logout"); } catch { /* leaving anyway */ }
      logoutLocal();
    }
    function sendText(event) {
      if (event && event.shiftKey) return;
      if (event) event.preventDefault();
      const text = form.text.trim();
      if (!text) return;
      form.text = "";
      sendMessage({ media: 1, content: text });
    }
    async function sendFile(kind) {
      const accept = { image: "image/*", camera: "image/*", video: "video/*" }[kind];
      const url = await pickAndUpload(accept, kind === "camera" ? "environment" : undefined);
      if (url) sendMessage({ media: kind === "video" ? 8 : 4, url });
    }
    function sendForm(kind) {
      if (kind === "link") sendMessage({ media: 7, url: form.url.trim() });
      if (kind === "news") sendMessage({ media: 2, content: form.title.trim(), url: form.url.trim(), ...(form.pic.trim() ? { pic: form.pic.trim() } : {}) });
      if (kind === "redpacket") {
        const cents = Math.round(parseFloat(form.amount) * 100);
        if (!(cents > 0)) { toast(t.amount); return; }
        sendMessage({ media: 5, amount: cents, memo: form.memo.trim() || t.wishDefault });
      }
      Object.assign(form, { url: "", title: "", pic: "", amount: "", memo: "" });
    }
    function sendCard(friend) {
      sendMessage({ media: 9, content: String(friend.id), memo: friend.nickname, ...(friend.avatar ? { pic: friend.avatar } : {}) });
    }
    function voiceDown(event) { if (event.pointerType === "touch") startRecording(); }
    function voiceUp(event) { if (event.pointerType === "touch") stopRecording(); }
    function voiceClick(event) {
      if (event.pointerType === "touch") return;
      if (state.recording) stopRecording(); else startRecording();
    }
    function toggle(panel) { state.panel = state.panel === panel ? "" : panel; }
    return {
      t, state, form, EMOJI, chatMessages, unreadTotal, conversationRows, doLogin, doRegister, pickAvatar,
      addFriend, joinCommunity, createCommunity, leaveCommunity, editProfile, saveProfile, logout, openChat,
      loadEarlier, sendText, sendFile, sendForm, sendCard, sendMessage, voiceDown, voiceUp, voiceClick, toggle,
    };
  },
  template: "#app-template",
};

document.addEventListener("visibilitychange", () => { if (!document.hidden) markRead(); });
createApp(App).mount("#app");
if (state.user) { conn.start(state.user); loadLists(); }
