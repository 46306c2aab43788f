// The official openai client against a running `vadapt serve`: models.list, a chat with an image
// (data: URL), the same streamed, and a bad request. Prints one JSON object with what it got.
// Usage: node openai_client.mjs BASE_URL MODEL IMAGE_PNG [API_KEY]
import fs from 'node:fs';
import OpenAI from 'openai';

const [baseURL, model, image, apiKey] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: apiKey || 'none', maxRetries: 0, timeout: 60000 });
const url = 'data:image/png;base64,' + fs.readFileSync(image).toString('base64');
const messages = [{ role: 'user', content: [{ type: 'text', text: 'What colour?' }, { type: 'image_url', image_url: { url } }] }];
const out = {};

const models = await client.models.list();
out.models = [];
for await (const m of models) out.models.push(m.id);

const chat = await client.chat.completions.create({ model, messages, temperature: 0, max_tokens: 6 });
out.chat = chat.choices[0].message.content;
out.finish_reason = chat.choices[0].finish_reason;
out.usage = chat.usage;

const stream = await client.chat.completions.create({ model, messages, temperature: 0, max_tokens: 6, stream: true });
out.stream = '';
out.chunks = 0;
for await (const chunk of stream) {
  out.chunks++;
  out.stream += chunk.choices[0]?.delta?.content ?? '';
}

try {
  await client.chat.completions.create({ model: 'no-such-model', messages, max_tokens: 2 });
  out.error_status = 0;
} catch (e) {
  out.error_status = e.status;
  out.error_message = e.error?.message ?? String(e);
}
console.log(JSON.stringify(out));
