// Copies UTM parameters of `$current_url` into the event's properties and, as the person's
// first touch, into `$set_once`. Counts tagged events in the cache and logs the count every minute.
import type { PluginEvent, PluginMeta } from '@posthog/plugin-scaffold'

type Meta = PluginMeta<{ config: { parameters: string }; global: { parameters: string[] } }>

export function setupPlugin({ config, global }: Meta): void {
    global.parameters = (config.parameters || '')
        .split(',')
        .map((name) => name.trim())
        .filter((name) => name.length > 0)
}

export async function processEvent(event: PluginEvent, { global, cache }: Meta): Promise<PluginEvent> {
    const url: unknown = event.properties?.['$current_url']
    if (typeof url !== 'string') {
        return event
    }
    let params: URLSearchParams
    try {
        params = new URL(url).searchParams
    } catch {
        return event // not a URL: nothing to copy
    }
    const found: Record<string, string> = {}
    for (const name of global.parameters) {
        const value = params.get(name)
        if (value) {
            found[name] = value
        }
    }
    if (Object.keys(found).length === 0) {
        return event
    }
    event.properties = { ...event.properties, ...found }
    const initial: Record<string, string> = {}
    for (const [name, value] of Object.entries(found)) {
        initial[`initial_${name}`] = value
    }
    event.$set_once = { ...(event.$set_once || {}), ...initial }
    await cache.incr('tagged_events')
    return event
}

export async function runEveryMinute({ cache }: Meta): Promise<void> {
    const tagged = (await cache.get('tagged_events', 0)) as number
    console.log(`tagged events so far: ${tagged}`)
}
