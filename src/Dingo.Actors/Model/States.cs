using System.Collections.Frozen;
using System.Reflection;
using System.Text.Json.Serialization;

namespace Dingo.Model;

// The platform's states as closed types. Each is stored (etcd, the object store, OSB answers) as the string it always
// was, named on its member by [JsonStringEnumMemberName]; `value.Wire()` gives that string wherever text is wanted (a
// log line, a metric label, an OSB field), never the C# name. A string no member names is refused when read, as a
// number is: a record with a state this version does not know is not taken for another state.

/// <summary>A node's role as the cluster sees it (its status in etcd, the routers, the console).</summary>
[JsonConverter(typeof(WireEnumConverter<NodeRole>))]
public enum NodeRole
{
    [JsonStringEnumMemberName("unknown")] Unknown,
    [JsonStringEnumMemberName("primary")] Primary,
    [JsonStringEnumMemberName("replica")] Replica,
}

/// <summary>What a node's PostgreSQL is doing, or that its HA passes fail (<see cref="NodeCondition"/>).</summary>
[JsonConverter(typeof(WireEnumConverter<NodeState>))]
public enum NodeState
{
    [JsonStringEnumMemberName("initialising")] Initialising,
    [JsonStringEnumMemberName("starting")] Starting,
    [JsonStringEnumMemberName("running")] Running,
    [JsonStringEnumMemberName("stopped")] Stopped,
    [JsonStringEnumMemberName("failed")] Failed,
    [JsonStringEnumMemberName("stopping")] Stopping,
}

/// <summary>The state of an asynchronous operation, as OSB's last_operation spells it.</summary>
[JsonConverter(typeof(WireEnumConverter<OperationState>))]
public enum OperationState
{
    [JsonStringEnumMemberName("in progress")] InProgress,
    [JsonStringEnumMemberName("succeeded")] Succeeded,
    [JsonStringEnumMemberName("failed")] Failed,
}

[JsonConverter(typeof(WireEnumConverter<OperationKind>))]
public enum OperationKind
{
    [JsonStringEnumMemberName("provision")] Provision,
    [JsonStringEnumMemberName("update")] Update,
    [JsonStringEnumMemberName("deprovision")] Deprovision,
}

/// <summary>present: keep the instance running; absent: tear it down.</summary>
[JsonConverter(typeof(WireEnumConverter<DesiredState>))]
public enum DesiredState
{
    [JsonStringEnumMemberName("present")] Present,
    [JsonStringEnumMemberName("absent")] Absent,
}

/// <summary>A public port: active while its instance lives; retired for good after (never handed out again).</summary>
[JsonConverter(typeof(WireEnumConverter<PortState>))]
public enum PortState
{
    [JsonStringEnumMemberName("active")] Active,
    [JsonStringEnumMemberName("retired")] Retired,
}

/// <summary>primary: connections go to the primary; read-only: balanced over healthy replicas.</summary>
[JsonConverter(typeof(WireEnumConverter<PortRole>))]
public enum PortRole
{
    [JsonStringEnumMemberName("primary")] Primary,
    [JsonStringEnumMemberName("read-only")] ReadOnly,
}

/// <summary>creating: the role may not exist yet; ready: its credentials were handed out.</summary>
[JsonConverter(typeof(WireEnumConverter<BindingState>))]
public enum BindingState
{
    [JsonStringEnumMemberName("creating")] Creating,
    [JsonStringEnumMemberName("ready")] Ready,
}

/// <summary>Reads and writes a state as its stored string; refuses numbers and strings no member names.</summary>
public sealed class WireEnumConverter<T>() : JsonStringEnumConverter<T>(namingPolicy: null, allowIntegerValues: false)
    where T : struct, Enum;

public static class WireNames
{
    /// <summary>The string a state is stored and shown as (never its C# name).</summary>
    public static string Wire<T>(this T value) where T : struct, Enum =>
        Names<T>.ByValue.TryGetValue(value, out var name) ? name : throw new ArgumentOutOfRangeException(nameof(value), value, $"no {typeof(T).Name} has this value");

    /// <summary>The state a stored string names (exactly, as written); false for any other string.</summary>
    public static bool TryParseWire<T>(string? text, out T value) where T : struct, Enum
    {
        if (text is not null && Names<T>.ByName.TryGetValue(text, out value)) return true;
        value = default;
        return false;
    }

    private static class Names<T> where T : struct, Enum
    {
        public static readonly FrozenDictionary<T, string> ByValue = typeof(T).GetFields(BindingFlags.Public | BindingFlags.Static)
            .ToFrozenDictionary(f => (T)f.GetValue(null)!, f => f.GetCustomAttribute<JsonStringEnumMemberNameAttribute>()?.Name
                ?? throw new InvalidOperationException($"{typeof(T).Name}.{f.Name} has no stored name"));

        public static readonly FrozenDictionary<string, T> ByName = ByValue.ToFrozenDictionary(p => p.Value, p => p.Key, StringComparer.Ordinal);
    }
}
