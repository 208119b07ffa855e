// Takes the documentation screenshots (docs/img/) of a real conversation on a real server:
//   tests/browser/run.sh --screenshots
// desktop.png (1280x800, alice: Bob typing…, her last message delivered, Carol "active … ago"),
// phone.png (390x844, bob: Alice online, an unsent message), phone-dark.png (390x844, dark).

import { join } from "node:path";
import { mkdirSync } from "node:fs";
import {
  REPO,
  WAIT,
  startServer,
  removeDir,
  launchBrowser,
  openAs,
  sendViaComposer,
  waitMessage,
  serviceApi,
} from "./lib/harness.mjs";

const OUT = join(REPO, "docs/img");
mkdirSync(OUT, { recursive: true });

/** Sends messages as any user, through the service API's token and a bare WebSocket. */
async function sendAs(browser, server, user, roomId, bodies) {
  const { token } = await serviceApi(server, "POST", "/api/tokens", { user_id: user });
  const ctx = await browser.newContext();
  const page = await ctx.newPage();
  await page.goto(`${server.url}/healthz`);
  await page.evaluate(
    ({ token, roomId, bodies }) =>
      new Promise((resolve, reject) => {
        const ws = new WebSocket(`ws://${location.host}/ws`);
        let confirmed = 0;
        ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token }));
        ws.onmessage = (ev) => {
          const f = JSON.parse(ev.data);
          if (f.type === "ready") {
            bodies.forEach((body, i) =>
              setTimeout(() => ws.send(JSON.stringify({ type: "send", room_id: roomId, client_msg_id: `shot-${i}-${Date.now()}`, body })), i * 30),
            );
          } else if (f.type === "message" && ++confirmed === bodies.length) {
            ws.close();
            resolve();
          } else if (f.type === "error") reject(new Error(f.message));
        };
      }),
    { token, roomId, bodies },
  );
  await ctx.close();
}

const server = await startServer({ env: { CHAT_SERVICE_KEY: "screenshot-service-key-0123456789abcdef" } });
const browser = await launchBrowser();
try {
  // Other matches of Alice's, so her list looks lived in.
  const carol = await serviceApi(server, "POST", "/api/rooms", { members: ["alice", "carol"] });
  await sendAs(browser, server, "carol", carol.room_id, ["Hi Alice! Your dog is adorable 🐶", "What's her name?"]);
  const dan = await serviceApi(server, "POST", "/api/rooms", { members: ["alice", "dan"] });
  await sendAs(browser, server, "dan", dan.room_id, ["It was nice talking, take care!"]);
  await serviceApi(server, "DELETE", `/api/rooms/${dan.room_id}`);

  const alice = await openAs(browser, server.url, "alice", { viewport: { width: 1280, height: 800 } });
  const bob = await openAs(browser, server.url, "bob", { viewport: { width: 390, height: 844 } });
  const bobRoom = await bob.evaluate(() => window.matchchat.client.getRooms()[0].room_id);
  await alice.locator(`[data-testid="room"][data-room-id="${bobRoom}"]`).click();

  const script = [
    ["alice", "Hey Bob! Loved your photo from the Dolomites 🏔️"],
    ["bob", "Thanks! That was the Tre Cime loop, 10 km of pure wow. Do you hike?"],
    ["alice", "All the time! Mostly day trips around the lakes though 🥾"],
    ["alice", "Any tips for a first multi-day trip?"],
    ["bob", "Start with huts, not tents 😄 Light pack, good socks, and an early start every day."],
    ["bob", "Coffee this weekend? I can bring the maps ☕🗺️"],
    ["alice", "Saturday works! 10:30 at Café Lumen?"],
    ["bob", "Perfect. I'll be the one in the ridiculous orange jacket 🧡"],
  ];
  for (const [who, body] of script) {
    const page = who === "alice" ? alice : bob;
    await sendViaComposer(page, body);
    await waitMessage(alice, body, ["seen"]);
    await waitMessage(bob, body, ["seen"]);
    if (body.startsWith("Coffee")) {
      // Alice writes to the wrong chat and unsends it: it stays as "This message was deleted".
      const oops = "Oops, that was meant for my sister 🙈";
      await sendViaComposer(alice, oops);
      await waitMessage(bob, oops, ["seen"]);
      const seq = await alice.evaluate((oops) => {
        const { client } = window.matchchat;
        const room = client.getRooms().find((r) => r.peer === "bob").room_id;
        const m = client.getMessages(room).find((x) => x.body === oops);
        return client.unsend(room, m.seq).then(() => m.seq);
      }, oops);
      await bob.waitForFunction((seq) => document.querySelector(`[data-testid="message"][data-seq="${seq}"]`)?.dataset.deleted === "true", seq, { timeout: WAIT });
    }
  }
  await bob.locator('[data-testid="composer"]').fill("See you there! 🙌");
  await bob.locator('[data-testid="composer"]').blur();
  await bob.waitForFunction(() => document.querySelector('[data-testid="presence"]')?.dataset.online === "true", null, { timeout: WAIT });
  // The pointer rests where the login button was: away with it, or it hovers a message.
  await bob.mouse.move(1, 1);
  await bob.screenshot({ path: join(OUT, "phone.png"), animations: "disabled" });
  await bob.emulateMedia({ colorScheme: "dark" });
  await bob.screenshot({ path: join(OUT, "phone-dark.png"), animations: "disabled" });

  // Bob goes back to his list: Alice's last one is delivered (his phone got it), not seen.
  // Then he starts typing: "typing…" under his name on Alice's screen.
  await bob.getByRole("button", { name: "Back to conversations" }).click();
  const last = "Ha, deal. See you there!\nI'll bring the trail snacks 🍫";
  await sendViaComposer(alice, last);
  await waitMessage(alice, last, ["delivered"]);
  // (His composer sent one a moment ago: the client lets the next go after 3 s.)
  await bob.waitForFunction(() => window.matchchat.client.typing(window.matchchat.client.getRooms()[0].room_id), null, { timeout: WAIT, polling: 200 });
  await alice.locator('[data-testid="typing"]').waitFor({ state: "visible", timeout: WAIT });
  await alice.locator('[data-testid="composer"]').fill("Can't wait");
  await alice.locator('[data-testid="composer"]').blur();
  await alice.mouse.move(1, 1);
  await alice.waitForFunction(() => document.fonts.status === "loaded", null, { timeout: WAIT });
  await alice.screenshot({ path: join(OUT, "desktop.png"), animations: "disabled" });
  console.log(`screenshots written to ${OUT}`);
} finally {
  await browser.close();
  await server.stop();
  removeDir(server.dir);
}
