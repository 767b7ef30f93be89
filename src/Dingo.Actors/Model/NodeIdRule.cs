namespace Dingo.Model;

/// <summary>
/// What a node id may be, for every runtime: it becomes a folder name, a container and a volume name, and a value in
/// PostgreSQL's configuration. 1–100 characters of [A-Za-z0-9._-] starting with a letter or digit (so never "." or
/// ".."; 100 leaves room in Docker's names for the prefix and suffixes the runtime adds). The platform's own ids are
/// "n-" and eight hex digits.
/// </summary>
public static class NodeIdRule
{
    public const int MaxLength = 100;

    public static bool IsValid(string? nodeId) =>
        !string.IsNullOrEmpty(nodeId) && nodeId.Length <= MaxLength && char.IsAsciiLetterOrDigit(nodeId[0])
        && nodeId.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.');

    /// <exception cref="ArgumentException">the id breaks the rule</exception>
    public static void Check(string? nodeId)
    {
        if (!IsValid(nodeId)) throw new ArgumentException($"Invalid node id '{nodeId}'.", nameof(nodeId));
    }
}
