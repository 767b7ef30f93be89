using System.Text;

namespace Dingo.Broker.Osb;

/// <summary>
/// What the broker accepts from a request, checked before anything is read into etcd, a path or a log line:
/// body size, the ids in a route, and the size of each field.
/// </summary>
public static class RequestLimits
{
    /// <summary>Largest request body Kestrel reads for /v2 and /admin: an OSB request is a few hundred bytes.</summary>
    public const long MaxBodyBytes = 64 * 1024;
    /// <summary>Instance, binding and cell ids: GUIDs are 36 characters.</summary>
    public const int MaxIdLength = 128;
    /// <summary>Every other string field (service_id, plan_id, organization_guid, space_guid, app_guid, a parameter's value).</summary>
    public const int MaxStringLength = 256;
    /// <summary>An object field (context, parameters, bind_resource) as canonical JSON.</summary>
    public const int MaxObjectBytes = 16 * 1024;
    /// <summary>Most entries in the `cells` parameter.</summary>
    public const int MaxCells = 16;

    /// <summary>Route values that name something in etcd keys, object-store paths and logs.</summary>
    public static readonly IReadOnlyDictionary<string, string> RouteIds = new Dictionary<string, string>
    {
        ["id"] = "service instance id",
        ["bid"] = "binding id",
        ["cell"] = "cell id",
    };

    /// <summary>
    /// Null when <paramref name="id"/> is a safe id: 1 to 128 characters of [A-Za-z0-9._-], not starting with '.'
    /// (so never "." or ".."); else why not. OSB ids are GUIDs; anything else could split or escape an etcd key or a path.
    /// </summary>
    public static string? IdProblem(string what, string? id)
    {
        if (string.IsNullOrEmpty(id)) return $"the {what} is empty";
        if (id.Length > MaxIdLength) return $"the {what} is {id.Length} characters long: at most {MaxIdLength} are allowed";
        if (id[0] == '.') return $"the {what} must not start with '.'";
        foreach (var c in id)
            if (!(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.'))
                return $"the {what} may hold only letters, digits, '-', '_' and '.' (a GUID is best)";
        return null;
    }

    public static bool IsSafeId(string? id) => IdProblem("id", id) is null;

    /// <summary>
    /// A request value fit for a log line: control characters escaped and cut at <paramref name="max"/> characters,
    /// so nobody can forge or flood log lines.
    /// </summary>
    public static string ForLog(string? value, int max = 200)
    {
        if (value is null) return "";
        var sb = new StringBuilder(Math.Min(value.Length, max) + 8);
        foreach (var c in value)
        {
            if (sb.Length >= max) { sb.Append('…'); break; }
            if (char.IsControl(c) || c is '\u2028' or '\u2029') sb.Append($"\\u{(int)c:x4}");
            else sb.Append(c);
        }
        return sb.ToString();
    }
}
